"""One client API over every transport (SPEC §7-§8)."""

from ._async import AsyncClient, AsyncMessage, AsyncSubscription
from ._client import Client, Consumer, Message, Subscription, open

__all__ = ["Client", "AsyncClient", "Subscription", "AsyncSubscription", "Message",
           "AsyncMessage", "Consumer", "open"]
