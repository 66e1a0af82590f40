"""An OpenAI-compatible HTTP server and a web chat page for trained chat models."""
