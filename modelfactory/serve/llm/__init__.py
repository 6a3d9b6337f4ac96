"""OpenAI-compatible generation serving: one base causal LM with many LoRA adapters from the registry, served
together by continuous batching (`mf serve-llm`; see app.py for the routes and engine.py for the batching)."""

from .app import LLMSettings, create_app, run

__all__ = ["LLMSettings", "create_app", "run"]
