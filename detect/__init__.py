"""Telling generated video from real (issue 21): the `fakes` dataset stage built from the
project's own generators, the Xception detector (frame scores averaged per video), its
training, evaluation and scoring, and each family's detectability for the benchmark.

Layer: on core/, fomm/ (the generators and the prepared data), metrics/ (model specs) and
pipeline/ (the writer lock); below the command line. metrics/ reads the detectability.json
this package writes and never imports it.
"""
