"""Image engines behind one contract (base.py), a router that picks one per request, and prices."""
