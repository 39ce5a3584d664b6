"""What deepspeed_checks.py and deepspeed_reshape.py both use (they import it from their own folder, which Python
puts first on sys.path when it runs a script)."""


class NotAllowed:
    """A plain object: pickled by class reference, which ``torch.load(weights_only=True)`` refuses."""

    def __init__(self, value):
        self.value = value


def error_of(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test matches type and message
        return f"{type(error).__name__}: {error}"
    return None
