"""Adapters that wrap other libraries' quantizers in the :class:`quantizers.base.Quantizer` contract.

They are registered through the ``vqbench.quantizers`` entry-point group, exactly like a
third-party plugin (see ``pyproject.toml`` and docs/plugins.md); a missing optional
dependency raises :class:`vqbench.registry.PluginUnavailable`, so the names are simply absent.
"""
