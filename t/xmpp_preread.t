#!/usr/bin/perl

# Tests for the preread sniffer of ngx_xmpp_federation_module:
# "xmpp_federation_preread on" with stock map and proxy_pass routes by the
# "to" of the stream header, passes the bytes unchanged, never writes to
# the peer, and fills the variables, $xmpp_stream_error for a bad header.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/ time sleep /;

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream/);

# two local domains, each with its own backend; anything else goes to the
# default backend.  Each backend greets with its name, then echoes.

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example fabrikam-local.example;

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type               federated;
    }

    xmpp_federation_partner tailspin.example {
        type               public_verified;
    }

    map $xmpp_to $backend {
        contoso.example         127.0.0.1:%%PORT_8091%%;
        fabrikam-local.example  127.0.0.1:%%PORT_8092%%;
        default                 127.0.0.1:%%PORT_8093%%;
    }

    log_format x '$remote_port|$xmpp_from|$xmpp_to|$xmpp_partner|'
                 '$xmpp_partner_type|$xmpp_stream_error';

    access_log %%TESTDIR%%/x.log x;

    server {
        listen                  127.0.0.1:%%PORT_8080%%;
        xmpp_federation_preread on;
        proxy_pass              $backend;
    }

    server {
        listen                  127.0.0.1:%%PORT_8081%%;
        xmpp_federation_preread on;
        xmpp_federation_max_header_size 512;
        proxy_pass              $backend;
    }

    server {
        listen                  127.0.0.1:%%PORT_8082%%;
        xmpp_federation_preread on;
        preread_timeout         1s;
        proxy_pass              $backend;
    }
}

EOF

$t->run_daemon(\&backends, 'contoso' => port(8091),
	'fabrikam-local' => port(8092), 'default' => port(8093));

$t->try_run('no xmpp_federation_preread')->plan(17);

for my $p (8091, 8092, 8093) {
	$t->waitforsocket('127.0.0.1:' . port($p))
		or die "backend on " . port($p) . " not listening\n";
}

###############################################################################

my $STREAMS = 'http://etherx.jabber.org/streams';

sub hdr {
	return Test::Nginx::XMPP->header(@_);
}

# a header in an unusual but valid spelling, so that any rewriting shows

sub odd_header {
	my ($to, $from) = @_;

	return qq{<?xml version="1.0" encoding="UTF-8"?>\n}
		. qq{<stream:stream xmlns="jabber:server"\n\t}
		. qq{xmlns:stream="$STREAMS" xmlns:db="jabber:server:dialback"\n\t}
		. qq{from="$from"  to = '$to' version="1.0" >};
}

my $stanza = "\n<message from='a\@fabrikam.example' to='b\@contoso.example'"
	. " type=\"chat\"><body>Gr\xc3\xbc\xc3\x9fe \xe2\x98\x83 &amp; &#x263a;"
	. "</body></message>";

my %port_of;	# test name => client port, for the log lines

# sends a list of chunks (a reference: one byte at a time), each after
# the echo of the one before; returns everything received

sub through {
	my ($name, $port, @chunks) = @_;

	my $x = xmpp('127.0.0.1:' . port($port));
	$port_of{$name} = $x->sockport();

	for my $c (@chunks) {
		my $data = ref $c ? $$c : $c;

		if (ref $c) {
			$x->send_slowly($data, 0.002);
		} else {
			$x->send($data);
		}

		next if defined $x->read_until(qr/\Q$data\E\z/);

		$x->close();
		return $x->buffer() . '(no echo in time)';
	}

	my $got = $x->buffer();
	$x->close();

	return $got;
}

###############################################################################

my $h = odd_header('contoso.example', 'fabrikam.example');

is(through('contoso', 8080, $h . $stanza), "contoso\n" . $h . $stanza,
	'to contoso.example: its backend, header and stanza unchanged');

$h = odd_header('fabrikam-local.example', 'fabrikam.example');

is(through('fabrikam-local', 8080, $h, $stanza),
	"fabrikam-local\n" . $h . $stanza,
	'to fabrikam-local.example: its backend, stanza sent later unchanged');

my $hs = hdr(to => 'fabrikam-local.example', from => 'tailspin.example');

is(through('slowly', 8080, \$hs, $stanza), "fabrikam-local\n" . $hs . $stanza,
	'header one byte at a time: routed, unchanged');

my $bad = hdr(to => 'contoso.example', from => 'fabrikam.example')
	=~ s/>$/ <>/r;

is(through('not-well-formed', 8080, $bad), "default\n" . $bad,
	'not well-formed header: default backend, unchanged');

my $unknown = hdr(to => 'example.org', from => 'fabrikam.example');

is(through('host-unknown', 8080, $unknown . $stanza),
	"default\n" . $unknown . $stanza,
	'to unknown domain: default backend, unchanged');

my $stranger = hdr(to => 'contoso.example', from => 'example.org');

is(through('policy-violation', 8080, $stranger), "contoso\n" . $stranger,
	'from not a partner: routed by to, unchanged');

my $add = hdr(to => 'contoso.example', from => 'Corp.Fabrikam.Example.');

is(through('additional', 8080, $add), "contoso\n" . $add,
	'additional domain: routed');

my $pv = hdr(to => 'contoso.example', from => 'tailspin.example');

is(through('public_verified', 8080, $pv), "contoso\n" . $pv,
	'public_verified partner: routed');

my $big = hdr(to => 'contoso.example', from => 'fabrikam.example',
	extra => "a='" . ('x' x 600) . "'");

is(through('too-large', 8081, $big), "default\n" . $big,
	'header too large: default backend, unchanged');

# preread_timeout ends the session (stock nginx), the sniffer says nothing

my $x = xmpp('127.0.0.1:' . port(8082));
$x->send(substr(hdr(to => 'contoso.example', from => 'fabrikam.example'),
	0, 60));
ok($x->closed(timeout => 5) && $x->buffer() eq '',
	'incomplete header, preread_timeout: closed, nothing written');
$x = undef;

###############################################################################

# the variables, from the access log

my %line;

sub log_line {
	my ($name) = @_;

	my $port = $port_of{$name} // return 'no connection';
	my $deadline = time() + scaled(5);

	while (1) {
		my $log = eval { $t->read_file('x.log') } // '';
		if ($log =~ /^\Q$port\E\|(.*)$/m) {
			# "-" is how the log shows a variable without a value
			return join '|', map { $_ eq '-' ? '' : $_ }
				split(/\|/, $1, -1);
		}

		return 'no log line' if time() > $deadline;
		sleep(0.05);
	}
}

# sessions are logged when they end; wait for all, then stop

$line{$_} = log_line($_) for keys %port_of;

$t->stop();

is($line{contoso},
	'fabrikam.example|contoso.example|fabrikam.example|federated|',
	'variables: partner stream');
is($line{'public_verified'},
	'tailspin.example|contoso.example|tailspin.example|public_verified|',
	'variables: partner type public_verified');
is($line{additional},
	'Corp.Fabrikam.Example.|contoso.example|fabrikam.example|federated|',
	'variables: from as sent, partner is the primary domain');
is($line{'not-well-formed'}, '||||not-well-formed',
	'variables: not-well-formed');
is($line{'host-unknown'}, 'fabrikam.example|example.org|||host-unknown',
	'variables: host-unknown');
is($line{'policy-violation'}, 'example.org|contoso.example|||policy-violation',
	'variables: from not a partner, policy-violation');
is($line{'too-large'}, '||||policy-violation',
	'variables: header too large, policy-violation');

###############################################################################

# the backends: one process, three listeners; a connection is greeted with
# the name of its backend, then everything it sends is echoed

sub backends {
	my (%ports) = @_;

	my $sel = IO::Select->new();
	my %name;

	for my $n (keys %ports) {
		my $l = IO::Socket::INET->new(
			Proto => 'tcp',
			LocalAddr => "127.0.0.1:$ports{$n}",
			Listen => 16,
			Reuse => 1
		)
			or die "Can't listen on $ports{$n}: $!\n";

		$name{$l} = $n;
		$sel->add($l);
	}

	my %listener = map { $_ => 1 } $sel->handles();

	local $SIG{PIPE} = 'IGNORE';

	while (1) {
		for my $fh ($sel->can_read()) {
			if ($listener{$fh}) {
				my $c = $fh->accept() or next;
				$c->syswrite("$name{$fh}\n");
				$sel->add($c);
				next;
			}

			my $n = $fh->sysread(my $buf, 65536);

			if (!$n) {
				$sel->remove($fh);
				$fh->close();
				next;
			}

			$fh->syswrite($buf);
		}
	}
}

###############################################################################
