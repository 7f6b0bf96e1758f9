"""The web portal: a single-page app in the browser that calls Tunery's public REST API.

It has no private back door: every action goes through the same ``/v1`` and ``/openai/v1`` endpoints the
``openai`` client uses, with the user's API key. Python here only serves the page and its static files.
"""
