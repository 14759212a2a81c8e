#!/usr/bin/perl

# The files in conf.examples/ pass nginx -t, with their listen and
# gateway ports moved to free ports; each is the row of Lync's
# negotiation matrix it says it is, and only a row that warns warns.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my @files = sort glob("$FindBin::Bin/../conf.examples/*.conf");

my $t = Test::Nginx->new()->has(qw/stream/)->plan(3 * @files + 1);

###############################################################################

# the ports the examples use, and the test ports they become

my %port = (
	5269 => 8080,		# public listener
	15269 => 8081,		# internal listener
	5299 => 8082,		# the gateway
	5270 => 8083,		# direct TLS
);

# the matrix rows that warn, and why; every other row that nginx -t
# accepts is silent (DESIGN.md section 1)

my %matrix = (
	'required required on' => [ 1, 'dialback is never used' ],
	'required required off' => [ 2 ],
	'optional required on' => [ 3, 'SASL needs TLS' ],
	'optional required off' => [ 4, 'SASL needs TLS' ],
	'not_supported required on' => [ 5, 'SASL can never happen' ],
	'required optional on' => [ 7 ],
	'required optional off' => [ 8 ],
	'optional optional on' => [ 9, 'SASL needs TLS' ],
	'optional optional off' => [ 10, 'SASL needs TLS' ],
	'not_supported optional on' => [ 11, 'SASL can never happen' ],
	'required not_supported on' => [ 13 ],
	'optional not_supported on' => [ 15 ],
	'not_supported not_supported on' => [ 17 ],
);

my %rows;

for my $file (@files) {
	(my $name = $file) =~ s!.*/!!;

	open(my $fh, '<', $file) or die "Can't open $file: $!\n";
	my $text = do { local $/; <$fh> };
	close $fh;

	# the row the file says it is, and the partner's settings

	my ($row) = $text =~ /^#.*\brow (\d+)\b/m;
	my %set = map { $_ => ($text =~ /^\s*$_\s+(\S+);/m)[0] // '' }
		qw/ tls sasl dialback /;
	my $m = $matrix{"$set{tls} $set{sasl} $set{dialback}"} // [ 0 ];

	$rows{$m->[0]} = $name;

	is($m->[0], $row // '(none)',
		"$name: row $m->[0] (tls $set{tls}, sasl $set{sasl},"
		. " dialback $set{dialback}) as its comment says");

	# free ports for everything the file listens on or connects to

	my @bad;

	$text =~ s{^(\s*(?:listen|server)\s+)((?:[\d.]+:)?)(\d+)\b}{
		my ($lead, $addr, $p) = ($1, $2, $3);
		push @bad, $p unless $port{$p};
		$lead . '127.0.0.1:%%PORT_' . ($port{$p} // 0) . '%%';
	}gme;

	die "$name: no test port for port(s) @bad\n" if @bad;

	$t->write_file_expand($name, "%%TEST_GLOBALS%%\n" . $text);

	my ($ok, $out) = $t->test_config($name);

	ok($ok && $out =~ /test is successful/, "$name: nginx -t")
		or diag($out);

	my @warn = $out =~ /^.*\[warn\].*$/mg;

	if (my $why = $m->[1]) {
		ok(@warn == 1 && $warn[0] =~ /partner "fabrikam\.example": \Q$why\E/,
			"$name: warning $why") or diag($out);

	} else {
		ok(!@warn, "$name: no warning") or diag($out);
	}
}

# Lync's common configurations, one file each; row 9 is the one that warns

is(join(' ', sort { $a <=> $b } keys %rows), '2 7 9 17',
	'rows 2, 7, 9, 17 have a file each');

###############################################################################
