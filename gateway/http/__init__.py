"""The HTTP surface: the app and its lifecycle, middleware, routes (thin handlers), the review page."""
