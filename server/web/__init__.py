"""The HTTP application: the app factory, middleware that runs before a body is read
(admission, upload limits), dependencies, response models, routers and static files."""
