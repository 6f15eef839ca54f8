"""Framework integrations over the SDK (optional extras: `pip install ragkv[langchain]`)."""
