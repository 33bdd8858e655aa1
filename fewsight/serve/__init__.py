"""`fewsight serve`: a local web page and JSON API that teach a model new classes from a few images."""

from fewsight.serve.app import create_app
from fewsight.serve.server import serve
from fewsight.serve.session import Session
from fewsight.serve.uploads import Limits

__all__ = ["Limits", "Session", "create_app", "serve"]
