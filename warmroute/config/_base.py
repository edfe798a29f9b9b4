"""What every config model shares: the strict base model, the address and name types, and
errors located at a key path.

Nothing here knows a config key; the section modules build on it.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port in 1..65535, got {value!r}")
    return value


def _ip_port(value: str) -> str:
    _host_port(value)
    host = value.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"expected ip:port (Envoy pins requests by IP address), got {value!r}"
        ) from None
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
IpPort = Annotated[str, AfterValidator(_ip_port)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")]
HeaderName = Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=128)]


class StrictModel(BaseModel):
    """Unknown keys are errors, and a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def located(message: str, *at: str | int) -> PydanticCustomError:
    """A model-level error that the loader reports at the key path ``at`` (below the
    model's own path), not at the model itself."""
    return PydanticCustomError("located", message, {"at": at})
