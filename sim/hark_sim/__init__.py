"""hark_sim: an offline stand-in for OpenAI's Realtime API and its key endpoint.

It never imports ``hark``: it is the other side of the wire, so the two must not
share a codec whose bugs would agree.
"""
