"""The losses of llmhdr_basicsr; :mod:`llmhdr_basicsr.plugin` imports the registering modules (kept out of this
file so that importing one module does not import them all)."""
