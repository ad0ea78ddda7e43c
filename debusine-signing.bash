# bash completion for debusine-signing. It asks the program itself for its
# commands ("debusine-signing help") and each command's options
# ("debusine-signing help COMMAND"), so it never falls out of step.

_debusine_signing() {
	local cur prev words cword
	_init_completion || return

	local i cmd=()
	for ((i = 1; i < cword; i++)); do
		case ${words[i]} in
		--config) ((i++)) ;;
		-*) ;;
		*) cmd+=("${words[i]}") ;;
		esac
	done
	case $prev in
	--config | --output | --certificate | --private-key | --passphrase-file | --password-file | --checkpoint)
		_filedir
		return
		;;
	esac

	local names
	names=$(debusine-signing help 2>/dev/null | sed -n 's/^  \([a-z][a-z0-9-]*\( [a-z][a-z0-9-]*\)\{0,1\}\)  .*/\1/p')
	if ((${#cmd[@]} == 0)); then
		COMPREPLY=($(compgen -W "$(echo "$names" | cut -d' ' -f1 | sort -u) help --config --version --help" -- "$cur"))
		return
	fi
	if ((${#cmd[@]} == 1)); then
		local subs
		subs=$(echo "$names" | awk -v c="${cmd[0]}" '$1 == c && NF == 2 { print $2 }')
		if [[ -n $subs && $cur != -* ]]; then
			COMPREPLY=($(compgen -W "$subs" -- "$cur"))
			return
		fi
	fi
	if [[ $cur == -* ]]; then
		local name=${cmd[0]}
		if ((${#cmd[@]} > 1)) && echo "$names" | grep -qx "${cmd[0]} ${cmd[1]}"; then
			name="${cmd[0]} ${cmd[1]}"
		fi
		COMPREPLY=($(compgen -W "$(debusine-signing help $name 2>/dev/null | sed -n 's/^  \(--[a-z0-9-]*\).*/\1/p') --help" -- "$cur"))
		return
	fi
	_filedir
}
complete -F _debusine_signing debusine-signing
