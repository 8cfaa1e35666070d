"""Channel-group analysis of Ultralytics models: which channels are coupled and who consumes them."""

from autoprune.channels.graph import ChannelGraph, ChannelGroup, Consumer, ConvInfo, Part, Producer
from autoprune.channels.symbolic import register_handler
from autoprune.channels.trace import analyze

__all__ = ["ChannelGraph", "ChannelGroup", "Consumer", "ConvInfo", "Part", "Producer", "analyze", "register_handler"]
