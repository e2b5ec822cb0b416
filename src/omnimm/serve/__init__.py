"""`omnimm serve`: an OpenAI-compatible HTTP server (and a web page) for the library's own models.

The pieces, each importable on its own (FastAPI and uvicorn only where the app is built):

- `schemas`: the request body (`ChatRequest`) and OpenAI-shaped errors (`APIError`);
- `media`: content parts (`image_url` / `video_url` as data URLs, or files inside `--allow-files`) read into clips;
- `backends`: what answers (`VideoLLMBackend` for a saved video/image LLM; plugins add modes through the
  `omnimm_serve_modes` hook);
- `batching`: the bounded queue that groups concurrent requests with the same options into one `generate` call;
- `app`: the FastAPI application and `serve()`, which binds and runs it under uvicorn.
"""
