"""The bot side: its WebSocket (`connection`), its URL per call (`url`) and the dialects it
speaks (`dialects`)."""
