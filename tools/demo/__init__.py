"""The out-of-the-box demo: random-weight models of the real file formats, a drawn catalog and
person, and a run of the example workflow through a real ComfyUI server (`python -m tools.demo`)."""
