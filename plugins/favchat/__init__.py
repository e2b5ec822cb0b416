"""favchat: a video LLM that reads faces (detection, alignment, multi-depth face encoders) next to the frames."""
