#!/usr/bin/python3
"""Serve a directory over FTP (anonymous, read-only, passive mode) on 127.0.0.1.

Usage: ftp_server.py DIR [PORT]
Prints "PORT <n>" once listening (PORT 0 = pick a free one), then serves until killed.
Needs pyftpdlib: Debian package python3-pyftpdlib (use /usr/bin/python3), or pip.
"""
import os
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
import logging

def main():
    root = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    # FTP_SERVER_LOG=INFO logs every transfer ("RETR /path completed=1") on stderr, which
    # tests keep as an access log to prove a guest read the tree.
    level = os.environ.get("FTP_SERVER_LOG", "WARNING")
    logging.basicConfig(level=getattr(logging, level, logging.WARNING))
    auth = DummyAuthorizer()
    auth.add_anonymous(root, perm="elr")
    auth.add_user("corral", "s3cret", root, perm="elr")
    handler = FTPHandler
    handler.authorizer = auth
    handler.passive_ports = None
    server = FTPServer(("127.0.0.1", port), handler)
    print("PORT %d" % server.socket.getsockname()[1], flush=True)
    server.serve_forever()

if __name__ == "__main__":
    main()
