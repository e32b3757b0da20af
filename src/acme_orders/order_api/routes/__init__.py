"""The API's routes, a router per resource; app.py includes them."""
