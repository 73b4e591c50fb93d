"""The base layer: what every other package builds on and which imports none of them.

Typed config (`config`), errors a user can act on (`errors`), media I/O and ffmpeg
(`media`), frames <-> tensors and resizing (`frames`), face detection and landmarks
(`faces`), devices and inference precision (`devices`), the generated-content marks
(`provenance`, `watermark`, `credentials`) and Ray start-up (`ray_runner`).
"""
