"""Thin route modules: parse → call one service method → convert."""
