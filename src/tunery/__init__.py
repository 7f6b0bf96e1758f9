"""Tunery: a self-hosted fine-tuning service that speaks the Azure OpenAI / OpenAI API."""

__version__ = "0.1.0"
