"""Exceptions raised by the oslo_peer.py RPC server.

This lives in its own small module, not in oslo_peer.py, because
oslo.messaging rebuilds a remote exception on the client by importing the
module named in the failure ("module": "peererrors") and calling
klass(*args, **kwargs).  A client started with
allowed_remote_exmods=['peererrors'] and this directory on sys.path therefore
gets a real PeerError_Remote carrying the server's kwargs, the same way nova
clients get nova.exception.* back.
"""


class PeerError(Exception):
    """Service exception with kwargs, shaped like nova's NovaException.

    The constructor accepts (message=None, **kwargs): that is both how the
    server raises it (kwargs only, message formatted from msg_fmt) and how
    the client rebuilds it (the message as the single positional argument,
    plus the kwargs from the wire).
    """

    msg_fmt = "Peer failure: %(reason)s"

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if not message:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                # Missing format keys must not hide the original error.
                message = self.msg_fmt
        super().__init__(message)
