"""The HTTP edge: FastAPI only; converts wire <-> domain; no SQL, no torch."""
