"""The shared scoring service: FastAPI app, member tokens, rules of use, every query audited."""
