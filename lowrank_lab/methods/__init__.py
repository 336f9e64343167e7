"""LightningModules, one per training method, on a shared base (`methods.base.AdapterModule`)."""
