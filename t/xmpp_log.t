#!/usr/bin/perl

# Tests for the variables of ngx_xmpp_federation_module in the stream
# access log of an "xmpp_federation inbound" server: $xmpp_from, $xmpp_to,
# $xmpp_partner, $xmpp_partner_type, $xmpp_stream_error.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Time::HiRes qw/ time sleep /;

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream/);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type               federated;
    }

    xmpp_federation_partner tailspin.example {
        type               public_verified;
    }

    log_format x '$remote_port|$xmpp_from|$xmpp_to|$xmpp_partner|'
                 '$xmpp_partner_type|$xmpp_stream_error';

    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8099%%;
        xmpp_federation_timeout 1s;
        access_log           %%TESTDIR%%/x.log x;
    }
}

EOF

$t->try_run('no xmpp_federation')->plan(10);

###############################################################################

sub hdr {
	return Test::Nginx::XMPP->header(@_);
}

# one session: sends $data (if any), reads until the edge closes, then
# closes; returns the client port that keys its log line

sub session {
	my ($data) = @_;

	my $x = xmpp('127.0.0.1:' . port(8080));
	my $port = $x->sockport();

	$x->send($data) if defined $data;
	$x->closed(timeout => 5);
	$x->close();

	return $port;
}

my %h = (to => 'contoso.example', from => 'fabrikam.example');
my $end = '</stream:stream>';
my $stanza = "<message from='a\@fabrikam.example' to='b\@contoso.example'/>";

my %port;

$port{good} = session(hdr(%h) . $end);
$port{additional} = session(hdr(%h, from => 'corp.fabrikam.example') . $end);
$port{as_sent} = session(hdr(%h, from => 'Corp.Fabrikam.Example.') . $end);
$port{public_verified} = session(hdr(%h, from => 'tailspin.example') . $end);
$port{no_from} = session(hdr(%h, from => undef) . $end);
$port{stanza} = session(hdr(%h) . $stanza);
$port{host_unknown} = session(hdr(%h, from => 'example.org',
	to => 'example.net'));
$port{policy} = session(hdr(%h, from => 'example.org'));
$port{not_well_formed} = session('<stream:stream <>');
$port{timeout} = session();

# sessions are logged when they end: wait for every line, then stop

my %line;

my $deadline = time() + scaled(5);

while (1) {
	my $log = eval { $t->read_file('x.log') } // '';

	for my $k (keys %port) {
		next unless $log =~ /^\Q$port{$k}\E\|(.*)$/m;

		# "-" is how the log shows a variable without a value
		$line{$k} = join '|', map { $_ eq '-' ? '' : $_ }
			split(/\|/, $1, -1);
	}

	last if keys %line == keys %port || time() > $deadline;
	sleep(0.05);
}

$t->stop();

###############################################################################

is($line{good}, 'fabrikam.example|contoso.example|fabrikam.example|federated|',
	'good stream: from, to, partner, type, no error');
is($line{additional},
	'corp.fabrikam.example|contoso.example|fabrikam.example|federated|',
	'additional domain: partner is the primary domain');
is($line{as_sent},
	'Corp.Fabrikam.Example.|contoso.example|fabrikam.example|federated|',
	'from as sent, partner matched case-insensitively');
is($line{public_verified},
	'tailspin.example|contoso.example|tailspin.example|public_verified|',
	'partner type public_verified');
is($line{no_from}, '|contoso.example|||', 'no from: from and partner empty');
is($line{stanza},
	'fabrikam.example|contoso.example|fabrikam.example|federated|'
	. 'policy-violation', 'stanza before required tls: policy-violation');
is($line{host_unknown}, 'example.org|example.net|||host-unknown',
	'to not local: host-unknown');
is($line{policy}, 'example.org|contoso.example|||policy-violation',
	'from not a partner: policy-violation, partner empty');
is($line{not_well_formed}, '||||not-well-formed', 'broken header: not-well-formed');
is($line{timeout}, '||||connection-timeout', 'no header: connection-timeout');

###############################################################################
