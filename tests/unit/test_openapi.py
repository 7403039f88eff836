"""The OpenAPI document: typed answers per status code, the key schemes, the upload form."""

from __future__ import annotations

from typing import Any

import pytest

from models.handlers.params import ClassificationParams
from services.api.app import create_app
from services.api.uploads import BUILTIN_PARAMS, PredictFields
from services.common.settings import ApiSettings

SPEC: dict[str, Any] = create_app(ApiSettings()).openapi()
OPERATIONS = [
    (path, method, op) for path, ops in SPEC["paths"].items() for method, op in ops.items()
]
ERROR_REF = "#/components/schemas/ErrorBody"


def test_key_schemes_are_declared_and_required_on_v1() -> None:
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    for path, method, op in OPERATIONS:
        expected = [{"bearer": []}, {"apiKey": []}] if path.startswith("/v1") else None
        assert op.get("security") == expected, f"{method} {path}"


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS, ids=lambda v: str(v)[:30])
def test_every_answer_has_a_schema_and_every_error_is_the_error_body(
    path: str, method: str, op: dict[str, Any]
) -> None:
    assert op["operationId"].isidentifier()  # the handler's name: a generated client's
    for status, response in op["responses"].items():
        content = response.get("content")
        assert content, f"{method} {path} {status} declares no body"
        if int(status) >= 400 and path != "/readyz":  # 503 there says why it is not ready
            assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, status
        else:
            (body,) = content.values()
            assert body["schema"], f"{method} {path} {status}"
    assert "HTTPValidationError" not in SPEC["components"]["schemas"]  # 422 is ours too


def test_upload_form_comes_from_its_models() -> None:
    body = SPEC["paths"]["/v1/predict"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    # The form's own fields, then every built-in handler's params.
    assert set(PredictFields.model_fields) <= set(schema["properties"])
    for params in BUILTIN_PARAMS:
        assert set(params.model_fields) <= set(schema["properties"]), params.__name__
    assert schema["required"] == ["file"]
    assert schema["properties"]["file"]["items"]["format"] == "binary"
    top_k = schema["properties"]["top_k"]
    field = ClassificationParams.model_fields["top_k"]
    assert top_k["type"] == "integer" and f"(default {field.default})" in top_k["description"]
    # Params carry no schema default: a generated client would send it to every model.
    assert not [n for n, p in schema["properties"].items() if "default" in p]
    # A batch has the same form without a deadline.
    batch = SPEC["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(batch["schema"]["properties"]) == set(schema["properties"]) - {"timeout"}
