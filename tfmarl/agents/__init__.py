"""Agents: Keras layers for users, items and the system that coordinates them.

They know nothing of TF-Agents; `tfmarl.rl` adapts them into TF-Agents networks.
"""

from tfmarl.agents.content import ContentAgent
from tfmarl.agents.knowledge import KnowledgeGraphEncoder
from tfmarl.agents.system import SystemAgent, mask_excluded
from tfmarl.agents.user import UserAgent

__all__ = ["ContentAgent", "KnowledgeGraphEncoder", "SystemAgent", "UserAgent", "mask_excluded"]
