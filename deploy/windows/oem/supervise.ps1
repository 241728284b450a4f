# Keep one process of the plan running: start it, wait for it, start it again when it exits (a crash,
# a terminal closed, a worker lost), with a back-off that resets once it has run for 5 minutes.
# Its output is appended to its log in the host's share; this supervisor's own lines go there too.
param(
    [Parameter(Mandatory = $true)][string]$PlanFile,
    [Parameter(Mandatory = $true)][string]$Id
)

. (Join-Path $PSScriptRoot 'common.ps1')

$plan = Get-Content -Path $PlanFile -Raw | ConvertFrom-Json
$entry = @($plan.processes | Where-Object { $_.id -eq $Id })
if ($entry.Count -ne 1) { throw "process $Id is not in $PlanFile" }
$entry = $entry[0]
$log = $entry.log
$pidFile = Join-Path $StateDir "$Id.pid"
$backoff = 1

function Format-Argument {
    param([string]$Value)
    return '"' + $Value.Replace('"', '\"') + '"'
}

while (-not (Test-Path $StopFile)) {
    $started = Get-Date
    $argv = @($entry.argv)
    Write-BridgeLog ("[{0}] starting: {1}" -f $Id, ($argv -join ' ')) $log
    if ($entry.role -eq 'terminal') {
        # A desktop application: started directly (cmd would not wait for it), nothing to capture.
        $rest = @($argv | Select-Object -Skip 1)
        $proc = Start-Process -FilePath $argv[0] -ArgumentList $rest -WorkingDirectory $entry.cwd -PassThru
    } else {
        # cmd appends stdout and stderr to the log; the python process runs as its child.
        $line = (($argv | ForEach-Object { Format-Argument $_ }) -join ' ') + ' >> ' + (Format-Argument $log) + ' 2>&1'
        $proc = Start-Process -FilePath $env:ComSpec -ArgumentList @('/d', '/s', '/c', "`"$line`"") `
            -WorkingDirectory $entry.cwd -WindowStyle Hidden -PassThru
    }
    Set-Content -Path $pidFile -Value $proc.Id
    $proc.WaitForExit()
    $ran = ((Get-Date) - $started).TotalSeconds
    if (Test-Path $StopFile) { break }
    if ($ran -ge 300) { $backoff = 1 }
    Write-BridgeLog ("[{0}] exited with code {1} after {2:N0}s; restarting in {3}s" -f $Id, $proc.ExitCode, $ran, $backoff) $log
    Start-Sleep -Seconds $backoff
    $backoff = [Math]::Min($backoff * 2, 60)
}
Write-BridgeLog "[$Id] supervisor stopped" $log
