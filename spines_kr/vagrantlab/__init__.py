"""The Vagrant multi-VM lab, booted on one machine without touching the machine's own network.

``spines-kr vagrant up TOPOLOGY.toml`` (or ``scripts/run vagrant``) builds, on this machine:

* **a box** (``box``): a small Debian image for Vagrant's libvirt provider, made from Debian's
  packages with mmdebstrap, cached under ``/var/cache/spines-kr/vagrant`` and rebuilt only when
  its recipe changes;
* **a lab** (``lab``): a network namespace ``skvag-<lab>`` holding a libvirtd of the lab's own
  (its configuration, state and run directories bind-mounted from the lab's directory in a
  private mount namespace), Vagrant itself, every bridge, tap, dnsmasq and VM; one VM per node
  of the topology file (``vagrant/Vagrantfile`` and ``spines_kr.deploy.vagrant``), spines-kr
  installed from this checkout (dependencies from a local wheelhouse: the VMs reach no
  network) and running as ``spines-kr@overlay``.

The VMs run with KVM where the machine has hardware virtualisation; where its KVM is PVM
(``kvm_pvm``: the machine is itself a VM, and PVM boots only guest kernels built for it) or
absent, with qemu's software emulation (TCG), slower but the same lab (``lab.accelerator``).
Their CPU model is kvm64: host-model and host-passthrough abort under nested KVM.

``spines-kr vagrant check`` runs the checks on a booted lab (units active, ``proto spines``
routes on every VM, a ping between the farthest nodes, a restart on a transit VM that must lose
no probe, ``systemd-analyze security``, the daemon's JSON events in the journal);
``spines-kr vagrant converge`` times convergence inside the VMs (stop, flush, start).

``spines-kr vagrant down`` removes all of it (VMs, networks, namespace, disk images, files),
also after a crash: whatever it needs to know is in the lab's directory, and every process it
stops is one that directory names (pid files of our libvirtd, its qemus and dnsmasqs) or one
that runs inside the lab's namespace.  ``safety.snapshot()`` is the before/after check of the
machine's own network that the lab runs around ``up`` and ``down``.
"""
