"""FOMM and its baselines: modules, losses, the training loop, the reconstruction protocol,
the animation library and its stages (animate, stream, export); on core/, never on pipeline/.
"""
