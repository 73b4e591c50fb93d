"""The paper's metrics (L1, AKD, MKR, AED), their backends, the benchmark and the report;
on core/ and fomm/, never on pipeline/.
"""
