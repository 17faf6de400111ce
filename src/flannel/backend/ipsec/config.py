"""The ipsec Backend object of net-conf.json (upstream pkg/backend/ipsec/ipsec.go).

Keys are matched case-insensitively (Go's JSON decoding), unknown keys are ignored. The error for a
short PSK is upstream's own text, so a Go flanneld and pyflannel refuse the same config alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flannel.errors import BackendConfigError

MIN_PSK_LENGTH = 96
DEFAULT_ESP_PROPOSAL = "aes128gcm16-sha256-prfsha256-ecp256"
OVERHEAD = 77
"""Upstream's ESP tunnel-mode overhead (outer IP 20 + ESP header/trailer/ICV, worst case)."""
UDP_ENCAP_OVERHEAD = 8
PSK_TOO_SHORT = "config error, password is too short"


@dataclass(frozen=True, slots=True)
class IpsecConfig:
    """Decoded ipsec backend settings."""

    psk: str
    udp_encap: bool = False
    esp_proposal: str = DEFAULT_ESP_PROPOSAL

    @property
    def overhead(self) -> int:
        """Bytes taken from the external MTU: 77, and 8 more for the UDP header with UDPEncap."""
        return OVERHEAD + (UDP_ENCAP_OVERHEAD if self.udp_encap else 0)

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> IpsecConfig:
        fields = {str(k).lower(): v for k, v in raw.items()}
        psk = fields.get("psk", "")
        if not isinstance(psk, str):
            raise BackendConfigError(
                f"ipsec Backend.PSK must be a string, got {type(psk).__name__}"
            )
        if len(psk) < MIN_PSK_LENGTH:
            raise BackendConfigError(
                f"{PSK_TOO_SHORT} (Backend.PSK has {len(psk)} characters, at least "
                f"{MIN_PSK_LENGTH} are needed; e.g. `openssl rand -hex 48`)"
            )
        encap = fields.get("udpencap", False)
        if not isinstance(encap, bool):
            raise BackendConfigError(f"ipsec Backend.UDPEncap must be true or false, got {encap!r}")
        proposal = fields.get("espproposal", DEFAULT_ESP_PROPOSAL)
        if (
            not isinstance(proposal, str)
            or not proposal.strip()
            or any(c in proposal for c in " ,")
        ):
            raise BackendConfigError(
                f"ipsec Backend.ESPProposal must be one strongSwan proposal such as "
                f"{DEFAULT_ESP_PROPOSAL!r}, got {proposal!r}"
            )
        return cls(psk=psk, udp_encap=encap, esp_proposal=proposal or DEFAULT_ESP_PROPOSAL)
