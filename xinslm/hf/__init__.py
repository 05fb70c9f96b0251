"""The modeling code `xinslm export` copies into a Hugging Face model folder: it imports only
torch and transformers, never xinslm, so the folder works where xinslm is not installed."""
