package Test::XMPP::PKI;

# A throwaway PKI for TLS tests, made at test time with the openssl command
# line (OpenSSL 3.0 and later): root and intermediate CAs, server and
# client certificates with XMPP identities (RFC 6120 13.7.1.2, RFC 6125 /
# RFC 9525, XEP-0178), validity in the past or the future, revocation and
# CRLs. Every certificate is issued with "openssl ca", so that start and end
# dates can be set without faking the clock.
#
#   my $pki = Test::XMPP::PKI->new($t->testdir());   # or new(dir => ...)
#
#   my $ca  = $pki->ca('root');                      # self-signed
#   my $int = $pki->intermediate('int', ca => 'root');
#
#   my $c = $pki->cert('fabrikam',
#       ca    => 'root',                  # a CA name or the ca() result
#       cn    => 'fabrikam.example',      # undef: no CN at all
#       dns   => [ 'fabrikam.example', '*.fabrikam.example' ],  # dNSName
#       srv   => [ 'fabrikam.example' ],  # SRV-ID _xmpp-server.D
#                                         # (otherName 1.3.6.1.5.5.7.8.7)
#       xmpp  => [ 'fabrikam.example' ],  # XmppAddr
#                                         # (otherName 1.3.6.1.5.5.7.8.5)
#       key   => 'rsa',                   # or 'ec' (P-256); default rsa
#       days  => 30,                      # from now (default 30)
#       not_before => -10,                # days from now, or
#       not_after  => '20200101000000Z',  # [YY]YYMMDDHHMMSSZ
#   );
#   $c->{cert}     the certificate (PEM)
#   $c->{key}      its private key (PEM, unencrypted)
#   $c->{chain}    certificate and the intermediates above it, no root
#   $c->{full}     the chain with the root
#   $c->{ca}       the issuing CA's name
#
#   $pki->revoke('fabrikam');             # by its issuer
#   my $crl = $pki->crl('root');          # path of a fresh CRL (PEM)
#   my $crls = $pki->crl('root', 'int');  # several CRLs in one file
#   my $trust = $pki->bundle('trust.pem', 'root', 'other');  # CA certs
#   my $text = $pki->text('fabrikam');    # openssl x509 -text
#
# Names are file names: everything of "NAME" lives in DIR/pki/NAME.*.

use warnings;
use strict;

use Carp qw/ croak /;
use File::Path qw/ make_path /;
use File::Spec;
use POSIX qw/ strftime /;

our $OPENSSL = $ENV{TEST_OPENSSL} || 'openssl';

my $OID_SRV = '1.3.6.1.5.5.7.8.7';	# id-on-dnsSRV
my $OID_XMPP = '1.3.6.1.5.5.7.8.5';	# id-on-xmppAddr

###############################################################################

# undef when the openssl command works, else why not

sub missing {
	my $v = `$OPENSSL version 2>/dev/null` // '';
	return "no openssl command" unless $v =~ /^OpenSSL (\d+)\.(\d+)/;
	return "OpenSSL 3.0 or later needed, found $v" if $1 < 3;
	return undef;
}

sub new {
	my ($class, @args) = @_;

	unshift(@args, 'dir') if @args % 2;
	my %opts = @args;

	my $dir = $opts{dir} or croak 'Test::XMPP::PKI->new: no dir';
	$dir = File::Spec->rel2abs("$dir/pki");
	make_path($dir) unless -d $dir;

	my $self = bless {
		dir => $dir,
		certs => {},
		serial => 0x1000 + int(rand(0x10000)),
	}, $class;

	return $self;
}

sub dir {
	my ($self) = @_;
	return $self->{dir};
}

# what was made under a name (hashref), or undef

sub get {
	my ($self, $name) = @_;
	return $self->{certs}{ref $name ? $name->{name} : $name};
}

###############################################################################

# running openssl

sub _run {
	my ($self, @args) = @_;

	my $log = "$self->{dir}/openssl.log";

	my $pid = fork();
	croak "fork: $!" unless defined $pid;

	if ($pid == 0) {
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
		print STDOUT "\n\$ $OPENSSL @args\n";
		{ no warnings 'exec'; exec { $OPENSSL } $OPENSSL, @args; }
		POSIX::_exit(127);
	}

	waitpid($pid, 0);
	return 1 if $? == 0;

	my $out = _slurp($log);
	$out = substr($out, -3000) if length $out > 3000;
	croak "openssl @args: failed (status $?):\n$out";
}

sub _slurp {
	my ($path) = @_;
	open(my $fh, '<', $path) or return '';
	local $/;
	my $d = <$fh>;
	close $fh;
	return $d // '';
}

sub _write {
	my ($path, $content) = @_;
	open(my $fh, '>', $path) or croak "Can't create $path: $!";
	print $fh $content;
	close $fh or croak "Can't write $path: $!";
}

sub _key {
	my ($self, $path, $type) = @_;

	$type //= 'rsa';

	if ($type eq 'rsa') {
		$self->_run('genpkey', '-algorithm', 'RSA',
			'-pkeyopt', 'rsa_keygen_bits:2048', '-out', $path);

	} elsif ($type eq 'ec') {
		$self->_run('genpkey', '-algorithm', 'EC',
			'-pkeyopt', 'ec_paramgen_curve:P-256', '-out', $path);

	} else {
		croak "unknown key type '$type' (rsa or ec)";
	}

	chmod(0600, $path);
	return $path;
}

# a date for openssl ca: days from now (a small integer, may be
# negative or fractional), or a date as openssl takes it

sub _date {
	my ($v) = @_;

	return undef unless defined $v;
	return $v if $v =~ /^(?:\d\d)?\d{12}Z$/;

	croak "bad date '$v': days from now or [YY]YYMMDDHHMMSSZ"
		unless $v =~ /^[-+]?\d+(?:\.\d+)?$/;

	return strftime('%Y%m%d%H%M%SZ', gmtime(time() + $v * 86400));
}

sub _subject {
	my (%a) = @_;

	my $s = '/O=Test::XMPP::PKI';
	$s .= "/OU=$a{ou}" if defined $a{ou};
	$s .= "/CN=$a{cn}" if defined $a{cn};

	return $s;
}

###############################################################################

# the openssl ca configuration of one CA

sub _ca_conf {
	my ($self, $name) = @_;

	my $d = "$self->{dir}/$name.ca";

	make_path("$d/newcerts");
	_write("$d/index.txt", '') unless -e "$d/index.txt";
	_write("$d/index.txt.attr", "unique_subject = no\n");
	_write("$d/crlnumber", "1000\n") unless -e "$d/crlnumber";

	my $conf = <<"EOF";
# CA '$name', written by Test::XMPP::PKI
[ ca ]
default_ca = CA_default

[ CA_default ]
dir = $d
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
serial = \$dir/serial
crlnumber = \$dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
preserve = yes

[ policy_any ]
organizationName = optional
organizationalUnitName = optional
commonName = optional

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
O = Test::XMPP::PKI

[ crl_ext ]
authorityKeyIdentifier = keyid:always
EOF

	_write("$d/ca.cnf", $conf);

	return "$d/ca.cnf";
}

# issues a certificate: the CSR of $key signed by $ca (or self-signed
# when $ca is undef) with the extensions in $ext

sub _issue {
	my ($self, %a) = @_;

	my $name = $a{name};
	my $dir = $self->{dir};
	my $issuer = $a{ca};

	my $csr = "$dir/$name.csr";
	my $extfile = "$dir/$name.ext";
	my $out = "$dir/$name.crt";

	_write($extfile, "[ ext ]\n$a{ext}");

	# the configuration of the CA that signs (its own, when self-signed)
	my $conf = $self->_ca_conf($issuer ? $issuer->{name} : $name);
	my ($cadir) = $conf =~ m!^(.*)/ca\.cnf$!;

	# a serial unique in this PKI, so that every certificate differs
	_write("$cadir/serial", sprintf("%08X\n", ++$self->{serial}));

	$self->_run('req', '-new', '-config', $conf, '-key', $a{key},
		'-subj', $a{subject}, '-out', $csr);

	# the end: not_after, or "days" after a relative not_before (or now)
	my $nb = $a{not_before};
	my $start = _date($nb // -1);
	my $end = _date($a{not_after})
		// _date((defined $nb && $nb =~ /^[-+]?\d+(?:\.\d+)?$/ ? $nb : 0)
			+ ($a{days} // 30));

	$self->_run('ca', '-batch', '-config', $conf, '-notext',
		'-in', $csr, '-out', $out,
		'-extfile', $extfile, '-extensions', 'ext',
		'-startdate', $start, '-enddate', $end,
		($issuer
			? ('-cert', $issuer->{cert}, '-keyfile', $issuer->{key})
			: ('-selfsign', '-keyfile', $a{key})));

	unlink($csr);

	return $out;
}

###############################################################################

# a self-signed root CA

sub ca {
	my ($self, $name, %a) = @_;

	croak "ca: '$name' exists" if $self->{certs}{$name};

	my $dir = $self->{dir};
	my $key = $self->_key("$dir/$name.key", $a{key});

	my $ext = "basicConstraints = critical,CA:TRUE\n"
		. "keyUsage = critical,keyCertSign,cRLSign\n"
		. "subjectKeyIdentifier = hash\n";

	my $cert = $self->_issue(name => $name, key => $key, ext => $ext,
		subject => _subject(cn => $a{cn} // "Test CA $name"),
		days => $a{days} // 3650, not_before => $a{not_before} // -365,
		not_after => $a{not_after});

	return $self->{certs}{$name} = {
		name => $name,
		cert => $cert,
		key => $key,
		chain => $cert,
		full => $cert,
		root => $name,
		is_ca => 1,
		parents => [],
	};
}

# an intermediate CA under ca => NAME (a root or another intermediate);
# pathlen => N limits what is below it

sub intermediate {
	my ($self, $name, %a) = @_;

	croak "intermediate: '$name' exists" if $self->{certs}{$name};

	my $issuer = $self->_issuer($a{ca});
	my $dir = $self->{dir};
	my $key = $self->_key("$dir/$name.key", $a{key});

	my $bc = 'critical,CA:TRUE';
	$bc .= ",pathlen:$a{pathlen}" if defined $a{pathlen};

	my $ext = "basicConstraints = $bc\n"
		. "keyUsage = critical,keyCertSign,cRLSign\n"
		. "subjectKeyIdentifier = hash\n"
		. "authorityKeyIdentifier = keyid:always\n";

	my $cert = $self->_issue(name => $name, key => $key, ext => $ext,
		ca => $issuer,
		subject => _subject(cn => $a{cn} // "Test intermediate $name"),
		days => $a{days} // 3650, not_before => $a{not_before} // -300,
		not_after => $a{not_after});

	my $c = $self->{certs}{$name} = {
		name => $name,
		cert => $cert,
		key => $key,
		root => $issuer->{root},
		is_ca => 1,
		ca => $issuer->{name},
		parents => [ $issuer->{name}, @{$issuer->{parents}} ],
	};

	$self->_chains($c);

	return $c;
}

# an end-entity certificate, for TLS servers and clients both

sub cert {
	my ($self, $name, %a) = @_;

	croak "cert: '$name' exists" if $self->{certs}{$name};

	my $issuer = $self->_issuer($a{ca});
	my $dir = $self->{dir};
	my $type = $a{key} // 'rsa';
	my $key = $self->_key("$dir/$name.key", $type);

	my @alt;
	my $n = 0;

	push @alt, map { 'DNS.' . ++$n . " = $_" } @{$a{dns} // []};
	push @alt, map { 'IP.' . ++$n . " = $_" } @{$a{ip} // []};

	$n = 0;
	push @alt, map { 'otherName.' . ++$n . " = $OID_SRV;IA5STRING:"
		. (/^_/ ? $_ : "_xmpp-server.$_") } @{$a{srv} // []};
	push @alt, map { 'otherName.' . ++$n . " = $OID_XMPP;UTF8:$_" }
		@{$a{xmpp} // []};
	push @alt, map { 'otherName.' . ++$n . " = $_" }
		@{$a{othername} // []};

	my $ku = $type eq 'ec' ? 'digitalSignature'
		: 'digitalSignature,keyEncipherment';

	my $ext = "basicConstraints = critical,CA:FALSE\n"
		. "keyUsage = critical,$ku\n"
		. "extendedKeyUsage = " . ($a{eku} // 'serverAuth,clientAuth')
		. "\n"
		. "subjectKeyIdentifier = hash\n"
		. "authorityKeyIdentifier = keyid:always\n";

	$ext .= "subjectAltName = \@alt_names\n[ alt_names ]\n"
		. join("\n", @alt) . "\n" if @alt;

	my $cert = $self->_issue(name => $name, key => $key, ext => $ext,
		ca => $issuer,
		subject => _subject(cn => exists $a{cn} ? $a{cn} : $name,
			ou => $a{ou}),
		days => $a{days}, not_before => $a{not_before},
		not_after => $a{not_after});

	my $c = $self->{certs}{$name} = {
		name => $name,
		cert => $cert,
		key => $key,
		root => $issuer->{root},
		ca => $issuer->{name},
		parents => [ $issuer->{name}, @{$issuer->{parents}} ],
	};

	$self->_chains($c);

	return $c;
}

sub _issuer {
	my ($self, $ca) = @_;

	croak 'no ca => NAME' unless defined $ca;

	my $c = $self->get($ca) or croak "unknown CA '$ca'";
	croak "'$c->{name}' is not a CA" unless $c->{is_ca};

	return $c;
}

# NAME.chain.pem: the certificate and the intermediates above it;
# NAME.full.pem: the same with the root

sub _chains {
	my ($self, $c) = @_;

	my @certs = ($c->{cert}, map { $self->{certs}{$_}{cert} }
		@{$c->{parents}});
	my $root = pop @certs;

	my $dir = $self->{dir};

	_write("$dir/$c->{name}.chain.pem", join('', map { _slurp($_) } @certs));
	_write("$dir/$c->{name}.full.pem",
		join('', map { _slurp($_) } @certs, $root));

	$c->{chain} = "$dir/$c->{name}.chain.pem";
	$c->{full} = "$dir/$c->{name}.full.pem";
}

###############################################################################

# revocation

sub revoke {
	my ($self, $name, %a) = @_;

	my $c = $self->get($name) or croak "revoke: unknown '$name'";
	my $issuer = $self->_issuer($c->{ca});
	my $conf = $self->_ca_conf($issuer->{name});

	$self->_run('ca', '-batch', '-config', $conf,
		'-cert', $issuer->{cert}, '-keyfile', $issuer->{key},
		'-revoke', $c->{cert},
		(defined $a{reason} ? ('-crl_reason', $a{reason}) : ()));

	$c->{revoked} = 1;

	return $self;
}

# a fresh CRL of each CA named, all in one file; its path

sub crl {
	my ($self, @names) = @_;

	croak 'crl: no CA named' unless @names;

	my $dir = $self->{dir};
	my %o = ref $names[-1] eq 'HASH' ? %{pop @names} : ();
	my @files;

	for my $n (@names) {
		my $ca = $self->_issuer($n);
		my $conf = $self->_ca_conf($ca->{name});
		my $out = "$dir/$ca->{name}.crl.pem";

		$self->_run('ca', '-batch', '-config', $conf, '-gencrl',
			'-cert', $ca->{cert}, '-keyfile', $ca->{key},
			'-crlexts', 'crl_ext',
			'-crldays', $o{days} // 30, '-out', $out);

		push @files, $out;
	}

	return $files[0] if @files == 1 && !defined $o{file};

	my $file = $o{file} // join('+', map { ref $_ ? $_->{name} : $_ }
		@names) . '.crls.pem';
	$file = "$dir/$file" unless $file =~ m!^/!;

	_write($file, join('', map { _slurp($_) } @files));

	return $file;
}

# CA certificates (or any) in one file, for a trust store; its path

sub bundle {
	my ($self, $file, @names) = @_;

	$file = "$self->{dir}/$file" unless $file =~ m!^/!;

	_write($file, join('', map {
		my $c = $self->get($_) or croak "bundle: unknown '$_'";
		_slurp($c->{cert});
	} @names));

	return $file;
}

# openssl x509 -text of a certificate, for diagnostics

sub text {
	my ($self, $name) = @_;

	my $c = $self->get($name) or croak "text: unknown '$name'";
	my $out = "$self->{dir}/$c->{name}.txt";

	$self->_run('x509', '-in', $c->{cert}, '-noout', '-text',
		'-out', $out);

	return _slurp($out);
}

# openssl verify, as a sanity check of what was made: (ok, output)

sub verify {
	my ($self, $name, %a) = @_;

	my $c = $self->get($name) or croak "verify: unknown '$name'";
	my $root = $self->get($a{trust} // $c->{root});
	my $out = "$self->{dir}/verify.out";

	my @cmd = ('verify', '-CAfile', $root->{cert});
	push @cmd, '-untrusted', $c->{chain} if @{$c->{parents}} > 1;
	push @cmd, '-crl_check_all', '-CRLfile', $a{crl} if $a{crl};
	push @cmd, '-verify_depth', $a{depth} if defined $a{depth};
	push @cmd, $c->{cert};

	my $pid = fork();
	if ($pid == 0) {
		open(STDOUT, '>', $out);
		open(STDERR, '>&', \*STDOUT);
		{ no warnings 'exec'; exec { $OPENSSL } $OPENSSL, @cmd; }
		POSIX::_exit(127);
	}
	waitpid($pid, 0);

	return ($? == 0 ? 1 : 0, _slurp($out));
}

1;
