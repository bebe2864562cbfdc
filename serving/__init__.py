"""Runtime core of mailroute: email parsing, text cleaning, configs, the model registry and the Ray Serve app.

Everything a serving machine needs lives here; nothing in this package imports `training`.
"""
