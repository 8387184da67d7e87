"""AEMhttpd: a single-threaded HTTP/1.1 static file server on the events API.

Every socket is an event (``loop.add_event``): the listening socket a
``Readable`` event whose handler accepts, each connection a ``SocketData``
event with the ``HTTPHead`` framer, so its handler is activated with
complete requests only, and only when data arrived: an idle connection
costs nothing per loop iteration.  A blocked response waits for a
one-shot ``Writable`` event; large files go out with ``os.sendfile``.
A soft timer per connection (the loop's timer wheel) cuts idle clients
and slowloris clients whose request head does not complete in time.
A route table (path prefix -> priority) classifies each request from its
request line at job level, so urgent requests are served before a backlog
of others (see ``SocketData(classify=...)``).

::

    aem-loop httpd [DIR] [--port 8080] [--backend selector|uvloop]

or from a program::

    server = aem_loop.httpd.HTTPServer("public", port=8080,
                                       routes={"/status": aem_loop.Priority.HIGH})
    await server.start()
    await server.serve_forever()      # until server.close() (graceful)
"""

from .server import HTTPServer, main, serve

__all__ = ["HTTPServer", "main", "serve"]
