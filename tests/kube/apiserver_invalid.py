"""What the API double's 422 answers must carry, shared by the object-kind and policy-watch suites.

Both suites post invalid pods, namespaces and NetworkPolicies and check the same thing: a
``Status`` with reason ``Invalid`` whose causes name the offending field with the apiserver's
wording. One check keeps the two tables judged the same way.
"""

from __future__ import annotations

import json
from typing import Any

from test_apiserver_double import raw

from flannel.lab.apiserver import KubeApiDouble

NP = "/apis/networking.k8s.io/v1"


def policy(name: str, **spec: Any) -> dict[str, Any]:
    """A NetworkPolicy body selecting every pod, with ``spec`` fields on top."""
    return {"metadata": {"name": name}, "spec": {"podSelector": {}, **spec}}


async def post_invalid(
    api: KubeApiDouble, path: str, body: dict[str, Any], field: str, message: str
) -> dict[str, Any]:
    """POST ``body``; assert a 422 Invalid with a cause on ``field`` containing ``message``."""
    code, _, answer = await raw(api, "POST", path, body)
    status: dict[str, Any] = json.loads(answer)
    assert code == 422 and status["reason"] == "Invalid", status
    causes = [c["message"] for c in status["details"]["causes"] if c["field"] == field]
    assert any(message in cause for cause in causes), status["details"]["causes"]
    return status
