"""The SDK: what user code touches, through the names `ember` exports. Importing it must stay
light (containers import it), so this package imports none of its modules itself."""
