"""The model library: FOMM and the families around it (fomm/families.py: Monkey-Net, X2Face,
MRAA, TPSMM, one package each), their modules and losses, the training loop, the
reconstruction protocol, animation (file, stream, ONNX export); on core/, never on pipeline/
or stages/.
"""
