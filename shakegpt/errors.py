class ShakeGPTError(Exception):
    """Bad input from the user (data, config, prompt, checkpoint).

    The entry points show these as a one-line message instead of a traceback.
    """
