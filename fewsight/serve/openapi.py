"""The OpenAPI 3.1 document of the JSON API, served at /openapi.json so that scripts can use it."""

from __future__ import annotations

from fewsight.use.export import EXPORT_FORMATS


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR_MEANINGS = {
    400: "Bad request: a malformed body, a bad value, a request that is not addressed to this "
    "server's host, or classes not ready to adapt; the message names the problem and the fix",
    403: "Forbidden: a page of another origin tried to change something",
    404: "Not found: no such class or image",
    409: "Conflict: the class exists already, or the classes of an exported classifier are fixed",
    413: "Too large: over a size or count limit; the message gives the sizes",
    415: "Unsupported media type: not an image, or not multipart/form-data",
}


def errors(*codes: int) -> dict:
    """The error answers `codes`, each JSON {"error": message} labelled with its meaning."""
    return {str(code): _json(_ref("Error"), ERROR_MEANINGS[code]) for code in codes}


def _png(description: str) -> dict:
    return {"description": description, "content": {"image/png": {}}}


FILES = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }
        }
    },
}
CLASS_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[^/]+$",
        "not": {"enum": [".", ".."]},
    },
}
INDEX = {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}

SCHEMAS = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
    "Model": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "algorithm": {"type": "string"},
            "family": {"enum": ["maml", "model-based"]},
            "adapt_steps": {"type": "integer", "description": "gradient steps of adaptation (0: one pass)"},
            "ways": {"type": ["integer", "null"], "description": "the exact class count it takes, if fixed"},
            "image_size": {"type": "integer"},
            "channels": {"type": "integer"},
            "fixed_classes": {"type": "boolean", "description": "an exported classifier: no teaching"},
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Classes": {
        "type": "object",
        "properties": {
            "classes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "images": {"type": "integer"}},
                },
            },
            "adapted": {"type": "boolean", "description": "whether the classifier fits these classes"},
        },
    },
    "Adapted": {
        "type": "object",
        "properties": {
            "classes": {"type": "array", "items": {"type": "string"}},
            "seconds": {"type": "number"},
        },
    },
    "Predictions": {
        "type": "object",
        "properties": {
            "classes": {"type": "array", "items": {"type": "string"}},
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string"},
                        "predicted": {"type": "string"},
                        "probability": {"type": "number"},
                        "probabilities": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
            "adapt_seconds": {"type": "number"},
            "current": {"type": "boolean", "description": "false once the classes changed since"},
        },
    },
}

PATHS = {
    "/api/model": {"get": {"summary": "The model being served", "responses": {"200": _json(_ref("Model"))}}},
    "/api/classes": {
        "get": {
            "summary": "The classes and their image counts",
            "responses": {"200": _json(_ref("Classes"))},
        },
        "post": {
            "summary": "Make a new, empty class",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"name": {"type": "string"}}}
                    }
                },
            },
            "responses": {"201": _json(_ref("Classes"), "Created"), **errors(400, 403, 409, 413)},
        },
    },
    "/api/classes/{name}": {
        "delete": {
            "summary": "Remove a class and its images",
            "parameters": [CLASS_NAME],
            "responses": {"200": _json(_ref("Classes")), **errors(403, 404, 409)},
        }
    },
    "/api/classes/{name}/images": {
        "post": {
            "summary": "Add support images to a class (all or none)",
            "parameters": [CLASS_NAME],
            "requestBody": FILES,
            "responses": {"200": _json(_ref("Classes")), **errors(400, 403, 404, 409, 413, 415)},
        }
    },
    "/api/classes/{name}/images/{index}": {
        "get": {
            "summary": "Support image `index` of a class as the model sees it (its size and colour)",
            "parameters": [CLASS_NAME, INDEX],
            "responses": {"200": _png("OK"), **errors(404)},
        }
    },
    "/api/adapt": {
        "post": {
            "summary": "Adapt the model to the classes now (the MAML family takes gradient steps)",
            "responses": {"200": _json(_ref("Adapted")), **errors(400, 403)},
        }
    },
    "/api/predict": {
        "post": {
            "summary": "Predicted class and probabilities of query images, classified in one batch",
            "requestBody": FILES,
            "responses": {"200": _json(_ref("Predictions")), **errors(400, 403, 413, 415)},
        }
    },
    "/api/predictions": {
        "get": {
            "summary": "The last predictions (none before any), and whether the classes are unchanged since",
            "responses": {"200": _json(_ref("Predictions"))},
        }
    },
    "/api/predictions/{index}": {
        "get": {
            "summary": "Query image `index` of the last predictions, as the model saw it",
            "parameters": [INDEX],
            "responses": {"200": _png("OK"), **errors(404)},
        }
    },
    "/api/predictions.csv": {
        "get": {
            "summary": "The last predictions as CSV, as fewsight predict --csv writes them",
            "responses": {"200": {"description": "OK", "content": {"text/csv": {}}}},
        }
    },
    "/api/export": {
        "get": {
            "summary": "The adapted classifier as a file, as fewsight export writes it",
            "parameters": [
                {"name": "format", "in": "query", "schema": {"enum": list(EXPORT_FORMATS), "default": "pt"}}
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/octet-stream": {}}},
                **errors(400),
            },
        }
    },
}


def document(version: str) -> dict:
    """The OpenAPI document of fewsight `version`'s server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fewsight serve",
            "version": version,
            "description": "Teach a meta-learned model new classes from a few images each, then classify.",
        },
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
