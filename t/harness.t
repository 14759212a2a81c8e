#!/usr/bin/perl

# Self-test of the harness in t/lib: stock stream module only.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;

use Test::Nginx;
use Test::Nginx::Stream qw/ stream /;
use Test::Nginx::XMPP qw/ xmpp /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream/)->plan(15)
	->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    server {
        listen      127.0.0.1:%%PORT_8080%%;
        return      "hello\n";
    }

    server {
        listen      127.0.0.1:%%PORT_8082%%;
        proxy_pass  127.0.0.1:%%PORT_8081%%;
    }
}

EOF

my $d = $t->testdir();

my $tls = eval { require IO::Socket::SSL; 1 }
	&& system('openssl req -x509 -newkey rsa:2048 -nodes -days 2'
		. " -subj /CN=contoso.example -keyout '$d/key.pem'"
		. " -out '$d/cert.pem' >/dev/null 2>&1") == 0;

$t->run_daemon(\&echo_daemon, $d);
$t->run();
$t->waitforsocket('127.0.0.1:' . port(8081))
	or die "echo daemon not listening\n";

###############################################################################

is(stream('127.0.0.1:' . port(8080))->io(''), "hello\n", 'stream return');

# xmpp helper through the proxy to the echo daemon

my $x = xmpp(PeerAddr => '127.0.0.1:' . port(8082));

$x->open_stream(to => 'contoso.example', from => 'fabrikam.example',
	db => 1);
my $h = $x->read_header();

is(join('|', map { $x->attr($h, $_) // '-' }
		qw/ to from version xmlns:db id /),
	'contoso.example|fabrikam.example|1.0|jabber:server:dialback|-',
	'header echoed');

$x->send("<message from='a' to='b'><body>one</body></message>"
	. "<message from='a&amp;' to='b'><body>two &lt;x/&gt;</body>"
	. "</message>");

like($x->read_until(qr!</body>!), qr!^<message from='a' to='b'><body>one!,
	'read_until');
is($x->read_element('message'),
	"<message from='a&amp;' to='b'><body>two &lt;x/&gt;</body></message>",
	'read_element');
is($x->read_until(qr/never/, timeout => 0.3), undef, 'read_until timeout');

$x->send_slowly("<db:result from='fabrikam.example' to='contoso.example'"
	. " type='valid'/>", 0.002);
is($x->attr($x->read_element('db:result'), 'type'), 'valid', 'send_slowly');

ok(!$x->closed(timeout => 0.3), 'open connection not closed');

$x->send("<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:"
	. "xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
	. "no</text></stream:error></stream:stream>");

is($x->stream_error(), 'host-unknown', 'stream_error');
ok($x->closed(), 'closed');

# tls upgrade in the middle of the dialogue

SKIP: {
skip 'no openssl or IO::Socket::SSL', 2 unless $tls;

my $y = xmpp('127.0.0.1:' . port(8082));

$y->open_stream(to => 'contoso.example');
$y->read_header();
$y->send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");

ok(defined $y->read_element('proceed')
	&& $y->starttls(SSL_hostname => 'contoso.example'), 'starttls');

$y->open_stream(to => 'tls.example');
is($y->attr($y->read_header(), 'to') . ' '
	. ref($y->socket()), 'tls.example IO::Socket::SSL', 'echo over tls');

}

# configuration checks

my ($ok, $out) = $t->test_config();
ok($ok && $out =~ /syntax is ok/, 'test_config good') or diag($out);

$t->write_file_expand('bad.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    server {
        listen      127.0.0.1:%%PORT_8083%%;
        xmpp_bogus_directive on;
    }
}

EOF

($ok, $out) = $t->test_config('bad.conf');
ok(!$ok, 'test_config bad');
like($out, qr/unknown directive "xmpp_bogus_directive" in \S+bad\.conf:\d+/,
	'test_config message');

$t->reload();
is(stream('127.0.0.1:' . port(8080))->io(''), "hello\n", 'after reload');

###############################################################################

# echoes everything, one connection at a time; closes after the stream
# end tag; answers <starttls/> and goes on over tls

sub echo_daemon {
	my ($dir) = @_;

	my $server = IO::Socket::INET->new(
		Proto => 'tcp',
		LocalAddr => '127.0.0.1:' . port(8081),
		Listen => 5,
		Reuse => 1
	)
		or die "Can't listen: $!\n";

	local $SIG{PIPE} = 'IGNORE';

	while (my $c = $server->accept()) {
		eval {
			local $SIG{ALRM} = sub { die "timeout\n" };
			alarm(30);

			while ($c->sysread(my $buf, 65536)) {
				if ($buf =~ /<starttls/) {
					$c->syswrite("<proceed xmlns="
						. "'urn:ietf:params:xml:ns:xmpp-tls'/>");
					IO::Socket::SSL->start_SSL($c,
						SSL_server => 1,
						SSL_cert_file => "$dir/cert.pem",
						SSL_key_file => "$dir/key.pem"
					) or last;
					next;
				}

				$c->syswrite($buf);
				last if $buf =~ m!</stream:stream>!;
			}

			alarm(0);
		};

		$c->close();
	}
}

###############################################################################
