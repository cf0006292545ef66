"""e-mage service — Access.

The OIDC-secured gateway, policy decision point, shares and break-the-glass; emits access.decided.
"""

__version__ = "0.1.0"
