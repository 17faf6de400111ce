"""What the real API server validates for Namespaces, Pods and NetworkPolicies (PURE).

Each check yields field errors in upstream's wording (``field.Invalid`` / ``Required`` /
``NotSupported`` / ``Forbidden`` / ``Duplicate``); ``invalid`` folds them into the 422 Status the
server answers (``Pod "x" is invalid: [...]`` with ``details.causes``). Covered: object names
(RFC 1123 label for namespaces, subdomain for pods and policies), labels, label selectors
(matchLabels / matchExpressions operators and values), container and policy ports (number range,
IANA service names, protocols, ``endPort``), ipBlock CIDRs and ``except``, policyTypes, peers.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from flannel.lab.apiserver_select import LABEL_KEY, LABEL_VALUE
from flannel.lab.apiserver_store import ApiStatusError, Obj

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    r"for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
PROTOCOLS = ("SCTP", "TCP", "UDP")


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422."""

    field: str
    reason: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def bad(path: str, value: Any, detail: str) -> FieldError:
    """field.Invalid."""
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {_show(value)}: {detail}")


def required(path: str, detail: str = "") -> FieldError:
    """field.Required."""
    return FieldError(
        path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else "")
    )


def unsupported(path: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    """field.NotSupported."""
    values = ", ".join(f'"{v}"' for v in supported)
    return FieldError(
        path,
        "FieldValueNotSupported",
        f"Unsupported value: {_show(value)}: supported values: {values}",
    )


def forbidden(path: str, detail: str) -> FieldError:
    """field.Forbidden."""
    return FieldError(path, "FieldValueForbidden", f"Forbidden: {detail}")


def invalid(kind: str, name: str, errors: list[FieldError]) -> ApiStatusError:
    """The 422 Invalid Status for ``errors``."""
    texts = [e.text() for e in errors]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    causes = [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]
    return ApiStatusError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        {"name": name, "kind": kind, "causes": causes},
    )


def check_name(name: Any, *, label: bool) -> list[FieldError]:
    """metadata.name: an RFC 1123 label (namespaces) or subdomain (pods, policies)."""
    path = "metadata.name"
    if not name:
        return [required(path, "name or generateName is required")]
    if not isinstance(name, str):
        return [bad(path, name, "must be a string")]
    limit, pattern, msg = (
        (63, DNS1123_LABEL, LABEL_MSG) if label else (253, DNS1123_SUBDOMAIN, SUBDOMAIN_MSG)
    )
    errors = []
    if len(name) > limit:
        errors.append(bad(path, name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        errors.append(bad(path, name, msg))
    return errors


def _label_key_errors(path: str, key: Any) -> list[FieldError]:
    if not isinstance(key, str) or not LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63:
        return [
            bad(
                path,
                key,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                "'123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            )
        ]
    return []


def _label_value_errors(path: str, value: Any) -> list[FieldError]:
    if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
        return [
            bad(
                path,
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            )
        ]
    return []


def check_labels(labels: Any, path: str = "metadata.labels") -> list[FieldError]:
    """Label keys and values."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [bad(path, str(labels), "must be a map of strings")]
    errors = []
    for key, value in labels.items():
        errors += _label_key_errors(path, key)
        errors += _label_value_errors(path, value)
    return errors


def check_selector(selector: Any, path: str) -> list[FieldError]:
    """A metav1.LabelSelector (unversionedvalidation.ValidateLabelSelector)."""
    if selector is None:
        return []
    if not isinstance(selector, dict):
        return [bad(path, str(selector), "must be an object")]
    errors = check_labels(selector.get("matchLabels"), f"{path}.matchLabels")
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errors.append(bad(where, str(expr), "must be an object"))
            continue
        op, values = expr.get("operator"), expr.get("values") or []
        errors += _label_key_errors(f"{where}.key", expr.get("key"))
        if op in ("In", "NotIn"):
            if not values:
                errors.append(
                    required(
                        f"{where}.values", "must be specified when `operator` is 'In' or 'NotIn'"
                    )
                )
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errors.append(
                    forbidden(
                        f"{where}.values",
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )
                )
        else:
            errors.append(bad(f"{where}.operator", op, "not a valid selector operator"))
        for j, value in enumerate(values):
            errors += _label_value_errors(f"{where}.values[{j}]", value)
    return errors


def port_number(path: str, port: Any) -> list[FieldError]:
    """validation.IsValidPortNum."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return [bad(path, port, "must be between 1 and 65535, inclusive")]
    return []


def port_name(path: str, name: str) -> list[FieldError]:
    """validation.IsValidPortName (IANA_SVC_NAME)."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not re.match(r"^[-a-z0-9]+$", name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if not re.search(r"[a-z]", name):
        problems.append("must contain at least one letter (a-z)")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return [bad(path, name, p) for p in problems]


def _protocol(path: str, port: Obj) -> list[FieldError]:
    protocol = port.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        return [unsupported(f"{path}.protocol", protocol, PROTOCOLS)]
    return []


def validate_namespace(obj: Obj) -> list[FieldError]:
    meta = obj.get("metadata", {})
    return check_name(meta.get("name"), label=True) + check_labels(meta.get("labels"))


def validate_pod(obj: Obj) -> list[FieldError]:
    meta, spec = obj.get("metadata", {}), obj.get("spec")
    errors = check_name(meta.get("name"), label=False) + check_labels(meta.get("labels"))
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers:
        return [*errors, required("spec.containers")]
    seen_ports: set[str] = set()
    for i, container in enumerate(containers):
        where = f"spec.containers[{i}]"
        name = container.get("name")
        if not name:
            errors.append(required(f"{where}.name"))
        elif not DNS1123_LABEL.match(name) or len(name) > 63:
            errors.append(bad(f"{where}.name", name, LABEL_MSG))
        if not container.get("image"):
            errors.append(required(f"{where}.image"))
        for j, port in enumerate(container.get("ports") or []):
            at = f"{where}.ports[{j}]"
            if "containerPort" not in port:
                errors.append(required(f"{at}.containerPort"))
            else:
                errors += port_number(f"{at}.containerPort", port["containerPort"])
            errors += _protocol(at, port)
            if port.get("name"):
                errors += port_name(f"{at}.name", port["name"])
                if port["name"] in seen_ports:
                    errors.append(
                        FieldError(
                            f"{at}.name",
                            "FieldValueDuplicate",
                            f'Duplicate value: "{port["name"]}"',
                        )
                    )
                seen_ports.add(port["name"])
    return errors


def _policy_port(path: str, port: Obj) -> list[FieldError]:
    errors = _protocol(path, port)
    number, end = port.get("port"), port.get("endPort")
    if number is None:
        if end is not None:
            errors.append(
                bad(f"{path}.endPort", end, "may not be specified when `port` is not specified")
            )
    elif isinstance(number, int) and not isinstance(number, bool):
        errors += port_number(f"{path}.port", number)
        if end is not None:
            if isinstance(end, int) and end < number:
                errors.append(
                    bad(f"{path}.endPort", number, "must be greater than or equal to `port`")
                )
            errors += port_number(f"{path}.endPort", end)
    else:
        if end is not None:
            errors.append(
                bad(f"{path}.endPort", end, "may not be specified when `port` is non-numeric")
            )
        errors += port_name(f"{path}.port", str(number))
    return errors


def _cidr(path: str, text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(str(text), strict=False) if "/" in str(text) else None
    except ValueError:
        return None


def _ip_block(path: str, block: Obj) -> list[FieldError]:
    cidr_text = block.get("cidr")
    if not cidr_text:
        return [required(f"{path}.cidr")]
    cidr = _cidr(path, cidr_text)
    msg = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
    if cidr is None:
        return [bad(f"{path}.cidr", cidr_text, msg)]
    errors = []
    for i, text in enumerate(block.get("except") or []):
        inner = _cidr(path, text)
        if inner is None:
            errors.append(bad(f"{path}.except[{i}]", text, msg))
        elif inner.version != cidr.version or not inner.subnet_of(cidr) or inner == cidr:  # type: ignore[arg-type]
            errors.append(bad(f"{path}.except[{i}]", text, "must be a strict subset of `cidr`"))
    return errors


def _peer(path: str, peer: Obj) -> list[FieldError]:
    errors: list[FieldError] = []
    count = 0
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            count += 1
            errors += check_selector(peer[key], f"{path}.{key}")
    if peer.get("ipBlock") is not None:
        count += 1
        errors += _ip_block(f"{path}.ipBlock", peer["ipBlock"])
    if count == 0:
        errors.append(required(path, "must specify a peer"))
    elif count > 1 and peer.get("ipBlock") is not None:
        errors.append(forbidden(path, "may not specify both ipBlock and another peer"))
    return errors


def validate_network_policy(obj: Obj) -> list[FieldError]:
    meta, spec = obj.get("metadata", {}), obj.get("spec")
    errors = check_name(meta.get("name"), label=False) + check_labels(meta.get("labels"))
    if not isinstance(spec, dict):
        return [*errors, required("spec")]
    errors += check_selector(spec.get("podSelector"), "spec.podSelector")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            where = f"spec.{direction}[{i}]"
            for j, port in enumerate(rule.get("ports") or []):
                errors += _policy_port(f"{where}.ports[{j}]", port)
            for j, peer in enumerate(rule.get(peers_key) or []):
                errors += _peer(f"{where}.{peers_key}[{j}]", peer)
    types = spec.get("policyTypes") or []
    for i, kind in enumerate(types):
        if kind not in ("Ingress", "Egress"):
            errors.append(unsupported(f"spec.policyTypes[{i}]", kind, ("Ingress", "Egress")))
    if len(types) > 2:
        errors.append(
            bad("spec.policyTypes", str(types), "may not specify more than two policyTypes")
        )
    return errors
