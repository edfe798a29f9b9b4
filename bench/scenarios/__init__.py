"""One module per benchmark scenario; each has ``async def run(args) -> Path``."""
