#!/usr/bin/python3
# Send one chat message as a real XMPP client (slixmpp 1.8), for the tests.
#
#   xmpp_send.py --jid bob@fabrikam.example --password pw \
#       --server 127.0.0.1:PORT --to alice@contoso.example --body hello \
#       [--type chat] [--wait SECS] [--timeout SECS] [--tls [--ca FILE]]
#
# Connects to --server (no SRV lookup), without TLS unless --tls, logs in
# with SASL (PLAIN allowed in the clear: loopback only), sends the message
# and closes the stream once it has left the send queue. With --wait, it
# lingers that many seconds for an error bounce from the recipient (e.g.
# remote-server-not-found) and reports it.
#
# Output: one JSON object per line on stdout ({"event": ...}); exit status
# 0 sent, 1 usage/connection/timeout, 2 authentication failed, 3 an error
# bounce arrived within --wait.

import argparse
import asyncio
import json
import logging
import sys

import slixmpp


def out(**kw):
    print(json.dumps(kw), flush=True)


def shutdown(loop):
    # cancel what slixmpp leaves pending, quietly
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(
            asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--jid', required=True)
    ap.add_argument('--password', required=True)
    ap.add_argument('--server', required=True, help='host:port of c2s')
    ap.add_argument('--to', required=True)
    ap.add_argument('--body', required=True)
    ap.add_argument('--type', default='chat')
    ap.add_argument('--wait', type=float, default=0)
    ap.add_argument('--timeout', type=float, default=15)
    ap.add_argument('--tls', action='store_true')
    ap.add_argument('--ca', help='CA file to verify the server with')
    ap.add_argument('--debug', action='store_true')
    a = ap.parse_args()

    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if a.debug else logging.WARNING,
                        format='%(levelname)s %(name)s %(message)s')

    host, port = a.server.rsplit(':', 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    x = slixmpp.ClientXMPP(a.jid, a.password)
    x.loop = loop
    x['feature_mechanisms'].unencrypted_plain = True
    if a.ca:
        x.ca_certs = a.ca
    x.register_plugin('xep_0030')

    st = {'rc': 1}
    done = loop.create_future()

    def finish(rc):
        if not done.done():
            st['rc'] = rc
            done.set_result(rc)

    async def session_start(_):
        out(event='session', jid=str(x.boundjid))
        x.send_message(mto=a.to, mbody=a.body, mtype=a.type)
        out(event='sent', to=a.to, body=a.body)
        if a.wait > 0:
            await asyncio.sleep(a.wait)
        finish(0)

    def message(msg):
        if msg['type'] == 'error':
            out(event='error', **{'from': str(msg['from'])},
                condition=msg['error']['condition'],
                text=msg['error']['text'])
            finish(3)

    def failed_auth(_):
        out(event='failed_auth')
        finish(2)

    def connection_failed(err):
        out(event='connection_failed', error=str(err))
        finish(1)

    def disconnected(_):
        finish(st['rc'] if done.done() else 1)

    x.add_event_handler('session_start', session_start)
    x.add_event_handler('message', message)
    x.add_event_handler('message_error', message)
    x.add_event_handler('failed_auth', failed_auth)
    x.add_event_handler('connection_failed', connection_failed)
    x.add_event_handler('disconnected', disconnected)

    x.connect(address=(host, int(port)), force_starttls=a.tls,
              disable_starttls=not a.tls)

    try:
        loop.run_until_complete(asyncio.wait_for(done, a.timeout))
    except asyncio.TimeoutError:
        out(event='timeout')
        st['rc'] = 1

    # close the stream after the send queue is empty
    try:
        loop.run_until_complete(asyncio.wait_for(
            asyncio.ensure_future(x.disconnect(wait=2.0)), 4))
    except Exception:
        x.abort()

    shutdown(loop)
    return st['rc']


if __name__ == '__main__':
    sys.exit(main())
