"""``ts.protocol``: how a handler talks back to the server while it runs."""
