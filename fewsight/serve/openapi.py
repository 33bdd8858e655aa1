"""The OpenAPI 3.1 document of the JSON API, served at /openapi.json so that scripts can use it."""

from __future__ import annotations

from fewsight.use.export import EXPORT_FORMATS


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = {"description": "refused; the message names the problem and the fix", **_json(_ref("Error"))}
ERRORS = {str(code): ERROR for code in (400, 404, 409, 413, 415)}
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
CLASS_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

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
            "responses": {"201": _json(_ref("Classes"), "made"), **ERRORS},
        },
    },
    "/api/classes/{name}": {
        "delete": {
            "summary": "Remove a class and its images",
            "parameters": [CLASS_NAME],
            "responses": {"200": _json(_ref("Classes")), **ERRORS},
        }
    },
    "/api/classes/{name}/images": {
        "post": {
            "summary": "Add support images to a class (all or none)",
            "parameters": [CLASS_NAME],
            "requestBody": FILES,
            "responses": {"200": _json(_ref("Classes")), **ERRORS},
        }
    },
    "/api/adapt": {
        "post": {
            "summary": "Adapt the model to the classes now (the MAML family takes gradient steps)",
            "responses": {"200": _json(_ref("Adapted")), **ERRORS},
        }
    },
    "/api/predict": {
        "post": {
            "summary": "Predicted class and probabilities of query images, classified in one batch",
            "requestBody": FILES,
            "responses": {"200": _json(_ref("Predictions")), **ERRORS},
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
                **ERRORS,
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
